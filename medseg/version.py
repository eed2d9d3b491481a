"""medseg's version, in a module of its own: checkpoints record it, and reading it must not
import the whole API (the package's front door does)."""

__version__ = "0.2.0"
