"""Unsupervised domain adaptation from synthetic to real radiographs (DCAN).

The trainer reads synthetic stores and real data sets through ``datasets``;
see README.md (Roadmap) for what it will hold.
"""
