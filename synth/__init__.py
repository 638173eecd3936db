"""Synthetic chest X-ray data sets: a class-conditional StyleGAN2-ADA-style GAN.

``python -m synth.train`` trains the GAN on any registered data set (with
progressive growing, ADA, lazy R1 and an EMA generator; optionally an
auxiliary classifier of the conditions, AC-GAN, and class-balanced batches
of a label task, :mod:`synth.balance`);
``python -m synth.generate`` writes versioned Zarr stores
(:mod:`datasets.synthetic_store`). The trainer is :mod:`synth.trainer` (its
configuration :mod:`synth.config`), the generation of a store
:mod:`synth.generation` (callable from Python), the image rendering
:mod:`synth.rendering`; the two commands only parse options and call them.
"""
