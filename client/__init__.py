"""fedlego site: the Flower ClientApp, one handler per phase message (no science here)."""
