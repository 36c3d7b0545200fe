"""Coding: the entropy model and its rANS tables, the file format, and image <-> bytes with a model."""
