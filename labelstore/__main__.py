"""`python -m labelstore ...` runs the command line (labelstore/cli.py)."""

from labelstore.cli import main

if __name__ == "__main__":
    main(prog_name="labelstore")
