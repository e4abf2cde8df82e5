"""Encoders of a `Screening` (clare_dist.result), one module per output: the API's JSON
(`api_json`), the batch job's Parquet row (`parquet_row`) and the text of a terminal or a report
entry (`text`). Each turns the one result type into its output and, where the output is read
back (Parquet), back again; none decides anything about the scan."""
