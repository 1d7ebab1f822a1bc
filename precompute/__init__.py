"""clip-interpret: what do the attention heads of CLIP vision transformers do?"""

__version__ = "0.1.0"
