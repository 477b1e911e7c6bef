"""`python -m onnxbuild` entry point."""

from onnxbuild.cli import entry_point

if __name__ == "__main__":
    entry_point()
