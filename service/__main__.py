"""``python -m service``: the same entry point as ``judge-service``."""

from service.cli import main

if __name__ == "__main__":
    main()
