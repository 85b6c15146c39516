"""The `strata` command-line tools: replay, tier, groups, table, cost report, schema, cluster,
and the local and dev stacks. The operator itself is `strata_operator` (`strata operator`)."""
