"""fedlego's benchmarks (``fedlego-bench``): each command writes its figures and page into
``docs/benchmarks`` with the command that made them; see ``fedlego-bench --help``."""
