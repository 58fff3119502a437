"""CorLoc evaluation of single-object discovery on VOC07 / VOC12 trainval and COCO20k.

>>> from discovery.eval.datasets import open_dataset
>>> ds = open_dataset("voc07", "/data/voc")            # doctest: +SKIP
>>> [it.path for it in ds.items][:1]                    # doctest: +SKIP

Command line: ``python -m eval run|score|synth|fetch-coco20k`` (see docs/eval.md).
"""
