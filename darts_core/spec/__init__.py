"""What a job is, as data: op names, the search, training and dataset specs, the epoch record and the
genotype with its JSON and DARTS string forms.

Nothing in this subpackage imports torch (``tests/service/test_imports.py`` holds that): the API
validates specs and the ``darts`` client reads genotypes without loading it.
"""
