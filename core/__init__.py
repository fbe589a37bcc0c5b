"""The detector: loading, preprocessing, inference over all object queries, box arithmetic.

`core` depends on torch, transformers, scipy, pycocotools and supervision only; it never imports
`app`, `training` or `datasets` (see DESIGN.md).
"""
