"""Several commands and trainings in order: `cai recipe` (`end_to_end`). The top of the library: may
import any stage; only the CLI imports it.
"""
