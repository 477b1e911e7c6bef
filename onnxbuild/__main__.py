"""`python -m onnxbuild` entry point."""

from onnxbuild.cli import main

if __name__ == "__main__":
    main()
