"""fedlego coordinator: the Flower ServerApp orchestrating the phases (no science here)."""
