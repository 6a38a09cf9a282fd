"""Test set-up: nothing to arrange. The benchmarks are the installed package ``fedlego_bench``
(``bench/``, installed by ``make setup``), imported like any other."""
