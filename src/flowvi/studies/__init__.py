"""Studies run from the command line (``flowvi study``, ``flowvi nmcmc``): the stability ablation and the phi^4
sampler comparison. The library does not import this package; the CLI does."""
