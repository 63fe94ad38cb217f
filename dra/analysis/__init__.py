"""Tables and representation analyses built from evaluated cells."""
