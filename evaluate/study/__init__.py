"""The study report over a runs folder (``python -m evaluate.report``).

* :mod:`~evaluate.study.survey`: what the runs folder holds, told apart by
  the files in each folder;
* :mod:`~evaluate.study.tables`: the pillars' own tables, from their
  commands' JSON output;
* :mod:`~evaluate.study.assets`: the report's copies of the run folders'
  pictures, and the plots it draws for runs that lack them;
* :mod:`~evaluate.study.html`: escaped HTML pieces and the Markdown subset
  of the run folders' own reports;
* :mod:`~evaluate.study.pages` and :mod:`~evaluate.study.results_pages`:
  the pages; :mod:`~evaluate.study.build` writes them all.
"""
