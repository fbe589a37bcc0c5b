"""Data adapters: the synthetic shapes domain (and, later, the FiftyOne review store and COCO I/O).

Imports only `core.boxes` from the project (see DESIGN.md).
"""
