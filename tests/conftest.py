"""Order of the test files for the two pytest-xdist workers (pyproject: -n 2 --dist loadfile).

The end-to-end files take most of the time (the mini reproduction about 20 minutes); started
first, they run beside the unit tests instead of after them.
"""

LONGEST_FIRST = ("test_workflow_mini.py", "test_workflow_slurm.py", "test_workflow_imagenet_mini.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place
