"""Distillery's ML engine.

Nothing in this package imports Django: it takes plain specs and returns plain results, so a
GPU node, a notebook or a test can call it directly. Heavy libraries (torch, transformers, trl,
peft, bitsandbytes) are imported inside the functions that need them.
"""
