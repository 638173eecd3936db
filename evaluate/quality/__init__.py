"""How far a synthetic store can be trusted: image sets, features, distances, memorisation, sections, report."""
