"""Data adapters: the FiftyOne review store and its schema (`datasets.review`, with the one write path
for the truth in `datasets.revisions`, the label and box format in `datasets.labels` and the
database connection in `datasets.database`), COCO import and export (`datasets.coco`), checked zip
archives (`datasets.archives`), and the synthetic shapes domain (`datasets.shapes`).

Imports only `core.boxes` from the project (see DESIGN.md).
"""
