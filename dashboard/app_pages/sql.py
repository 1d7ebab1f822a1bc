"""Ad hoc SQL over every run: read-only, sandboxed, row-limited (``dashboard.user_sql``)."""

import streamlit as st

from dashboard import data, urlstate, widgets
from dashboard.user_sql import VIEWS_HINT, is_truncated, run_user_sql
from precompute.errors import QueryError

ROW_LIMIT = 10_000
RESULT = "sql.result"  # (query, Arrow table) of the last run, kept across reruns of this page


def use_example() -> None:
    st.session_state["sql.text"] = dict(data.EXAMPLE_QUERIES)[st.session_state["sql.example"]]


st.title("SQL")
st.caption(f"One read-only query (SELECT, WITH, FROM, DESCRIBE, SUMMARIZE) over every run. {VIEWS_HINT} "
           f"At most {ROW_LIMIT:,} rows come back; a query is stopped after 10 s.")

left, right = st.columns([3, 1], vertical_alignment="bottom")
left.selectbox("Example queries", [name for name, _ in data.EXAMPLE_QUERIES], key="sql.example")
right.button("Use this example", on_click=use_example, key="sql.use")
urlstate.seed("sql.text", "sql")
st.session_state.setdefault("sql.text", data.EXAMPLE_QUERIES[0][1])
sql = st.text_area("Query", key="sql.text", height=180)
linked = "sql" in st.query_params and RESULT not in st.session_state  # a pasted link runs its query once
if st.button("Run", type="primary", key="sql.run") or linked:
    urlstate.publish("sql", sql.strip() or None)
    try:
        st.session_state[RESULT] = (sql, run_user_sql(sql, widgets.data_dir(), row_limit=ROW_LIMIT))
    except QueryError as e:
        st.session_state.pop(RESULT, None)
        st.error(str(e))

if RESULT in st.session_state:
    ran, table = st.session_state[RESULT]
    if ran != sql:
        st.caption("Showing the result of the previous query; press Run for the edited one.")
    if is_truncated(table):
        st.warning(f"Only the first {ROW_LIMIT:,} rows are shown: add a LIMIT, a WHERE or an aggregate.")
    st.caption(f"{table.num_rows:,} row{'s' if table.num_rows != 1 else ''}")
    st.dataframe(table.to_pandas(), hide_index=True, width="stretch")
    widgets.download_table(table, "query", key="sql")  # built only when clicked: a wide result stalls no one
