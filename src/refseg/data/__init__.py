"""Data helpers: robust image loading, COCO io, few-shot sampling, splits, converters."""
