"""Tables and figures built from evaluation results (``results/eval/**.json``)."""
