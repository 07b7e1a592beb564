"""`python -m vslerp_app ...`, the twin of the `vslerp` console script."""

from vslerp_app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
