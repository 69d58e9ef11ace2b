"""HTTP routes: parse, call one function, shape the answer."""
