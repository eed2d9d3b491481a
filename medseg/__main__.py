"""`python -m medseg ...`: the same command line as `medseg ...`."""

from cli import main

if __name__ == "__main__":
    main(prog_name="medseg")
