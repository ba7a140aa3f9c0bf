"""Published baselines for prunekit: random, pooling, DivPrune, CDPruner, VisionZip,
FasterVLM, VisPruner, FastV and DART, each faithful to its official code (departures
are documented in each class's docstring)."""
