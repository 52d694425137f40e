-- Accounts whose onboarding started on the given day (a UTC calendar day), one per account.
--
-- Parameters:  day (DATE), the Dagster partition's date. Never write the at-sign parameter
--              syntax in a comment or string here: the emulator binds parameters by counting
--              their textual occurrences, comments included, and then fails the query.
-- Table:       the FROM placeholder is replaced by alert_platform.bigquery.onboarding.render_query
--              with the validated, backquoted `project.dataset.accounts` (a table name cannot be
--              a query parameter). It is the only text substituted; everything else is bound.
--
-- Rules (see docs/onboarding.md):
--   * the day is the UTC date of onboarding_started_at (NULL start: never qualifies);
--   * test accounts (is_test = TRUE) are excluded; NULL is_test counts as a real account;
--   * duplicates of an account on that day collapse to its earliest start; ties are broken on
--     the remaining columns with NULLS LAST (an ascending sort puts NULLs first by default, in
--     BigQuery and the emulator alike), so a complete row wins a tie and the chosen row, hence
--     the event built from it, is deterministic.
-- Rows with missing required fields are NOT filtered here: the producer rejects and reports
-- them, so bad warehouse data is visible instead of silently dropped.
SELECT
  salesforce_account_id,
  org_id,
  account_name,
  plan,
  onboarding_started_at,
  csdr_email,
  region
FROM {accounts_table}
WHERE
  DATE(onboarding_started_at, 'UTC') = @day
  AND is_test IS NOT TRUE
QUALIFY
  ROW_NUMBER() OVER (
    PARTITION BY salesforce_account_id
    ORDER BY
      onboarding_started_at,
      org_id NULLS LAST,
      account_name NULLS LAST,
      plan NULLS LAST,
      csdr_email NULLS LAST,
      region NULLS LAST
  ) = 1
ORDER BY onboarding_started_at, salesforce_account_id
