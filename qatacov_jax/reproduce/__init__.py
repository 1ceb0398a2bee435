"""Reproducing the papers' result tables: many configurations x folds, launched and gathered.

    tables.py        the tables as data: configurations, folds, split, metrics, printed values
    paper_values.py  the numbers the papers print
    tasks.py         one task = one configuration on one fold, trained into its run directory
    launchers.py     SLURM job arrays and Kubernetes indexed Jobs (+ the gather job)
    gather.py        runs -> the table beside the paper's values, missing runs listed
    render.py        the gathered table as Markdown and LaTeX

`scripts/reproduce.py --list` names the tables; docs/reproduce.md has one command per table.
"""

from qatacov_jax.reproduce.tables import TABLES, Column, Configuration, Table, Task, get_table

__all__ = ["TABLES", "Column", "Configuration", "Table", "Task", "get_table"]
