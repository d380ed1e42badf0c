"""dpo-diff: discrete prompt optimization for text-to-image diffusion models (DPO-Diff, ICML 2024).

Importing this package is cheap: it pulls in no torch, diffusers, transformers or nltk. Heavy pieces live in
submodules (``dpo_diff.backends.diffusers_sd``, ``dpo_diff.judges.clip``, ``dpo_diff.optimize``) and are imported
when used.
"""

from dpo_diff.space import Candidate, PromptPair, SearchSpace, Slot, load_space, load_spaces, save_spaces

__version__ = "0.1.0"

__all__ = ["Candidate", "PromptPair", "SearchSpace", "Slot", "load_space", "load_spaces", "save_spaces",
           "__version__"]
