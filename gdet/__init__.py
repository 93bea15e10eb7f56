"""gdet: GoogLeNet detection and classification (Going Deeper with Convolutions), reproduced and modernised."""
__version__ = "0.1.0"
