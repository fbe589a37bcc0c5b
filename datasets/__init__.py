"""Data adapters: the FiftyOne review store and its schema (`datasets.review`, with the label and box
format in `datasets.labels` and the database connection in `datasets.database`), COCO import and
export (`datasets.coco`), and the synthetic shapes domain (`datasets.shapes`).

Imports only `core.boxes` from the project (see DESIGN.md).
"""
