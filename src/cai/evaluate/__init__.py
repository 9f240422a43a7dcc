"""`cai eval ...`: the judge against human labels (`judge`), models against each other (`models`), the
score by revision of an SL run (`revisions`), and their records summed into report.json (`aggregate`).

May import label, runs and everything below; must not import generate, train, recipes or cli.
"""
