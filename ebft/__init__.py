"""ebft: energy-based fine-tuning (EBFT), SFT and RLVR of causal language models.

The package is driven by the Snakemake workflow in ``workflow/`` through the ``ebft`` console script;
every module holds one concept (see ``docs/architecture.md``).
"""

__version__ = "0.1.0"
