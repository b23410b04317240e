"""Model-analysis tools (attention locality, entropy, visualisations). ``eval.analysis.outgrid``: OutGridViT."""
