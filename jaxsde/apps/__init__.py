"""The command-line jobs behind the ``jaxsde`` console script (:mod:`jaxsde.apps.cli`): ``sample``
(an image grid and NFE/quality report), ``generate`` (sharded, resumable large-scale generation),
``demo`` and ``train``. Library code never imports from here."""
