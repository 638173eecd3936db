"""Evaluation library used by the trainers: metrics, attention inside the lungs, quality reports.

It imports no trainer; see README.md (Roadmap) for what it will hold.
"""
