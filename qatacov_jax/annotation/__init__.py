"""Collaborative annotation: the stages that train candidate models on the accepted masks,
the candidate store they write, the decisions and votes of annotators, and the report
(docs/annotation.md).

    layout.py      folders of accepted masks in the TFDS builders' layouts, image keys
    candidates.py  the candidate store (manifest, masks, probabilities, disagreement)
    decisions.py   outcomes, votes, majority and adjudication (pure logic)
    store.py       the annotation folder: decisions -> accepted dataset
    stage.py       Stage I (K-fold, out-of-fold candidates) and Stage II (all masks, a pool)
    report.py      machine-vs-manual preference, rejections, agreement, time per image
"""
