"""The fedlego science library: LegoBlock, LegoMerge, LegoFuse, tasks, training and site data.

Nothing in this package imports Flower: it runs centralized as well as inside a federation.
"""
