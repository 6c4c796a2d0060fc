//! What the database itself takes, measured in the same run as the drain:
//! the rows a drain stores, loaded into an empty copy of `messages` (same
//! primary key, unique event index and indexes) from one client, by binary
//! `COPY` (PostgreSQL) and by 1,000-row multi-row `INSERT ... ON CONFLICT
//! DO NOTHING`, one transaction per statement (both backends). The copy is
//! dropped afterwards.
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, QueryBuilder};
use sea_orm::Database;

const COLUMNS: &str = "tenant_id, session_id, position, source, event_id, role, content, model, provider, \
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, total_tokens, cost_micros, created_at, raw";
const INSERT_ROWS: usize = 1_000;

/// One message row shaped like the drain's (the bench's events).
pub struct Row {
    tenant_id: String,
    session_id: String,
    position: i64,
    event_id: String,
    role: &'static str,
    content: String,
    model: Option<&'static str>,
    provider: Option<&'static str>,
    tokens: [i64; 6],
    created_at: DateTime<Utc>,
    raw: String,
}

pub fn rows(tenant_id: &str, count: i64) -> Vec<Row> {
    let session = "limit";
    let now = Utc::now();
    (0..count)
        .map(|i| {
            let user = i % 2 == 0;
            let content = if user {
                format!("question {i} with some ordinary length to it")
            } else {
                format!("answer {i}, a few words long, like a short reply")
            };
            let raw = if user {
                serde_json::json!({"type": "message", "id": format!("{session}-{i}"), "timestamp": now.to_rfc3339(),
                    "message": {"role": "user", "content": content}})
            } else {
                serde_json::json!({"type": "message", "id": format!("{session}-{i}"), "timestamp": now.to_rfc3339(),
                    "message": {"role": "assistant", "content": [{"type": "text", "text": content}],
                        "provider": "local", "model": "fake-model", "stopReason": "stop",
                        "usage": {"input": 120, "output": 40, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 160, "cost": {"total": 0.0001}}}})
            };
            Row {
                tenant_id: tenant_id.to_string(),
                session_id: session.to_string(),
                position: i,
                event_id: format!("{session}-{i}"),
                role: if user { "user" } else { "assistant" },
                content,
                model: (!user).then_some("fake-model"),
                provider: (!user).then_some("local"),
                tokens: if user { [0; 6] } else { [120, 40, 0, 0, 160, 100] },
                created_at: now,
                raw: raw.to_string(),
            }
        })
        .collect()
}

/// Rows per second of each way in.
pub struct Limit {
    /// Binary COPY (PostgreSQL only).
    pub copy: Option<f64>,
    /// The same COPY with the real table's foreign key to `tenants` (a
    /// lookup per row; the copy made by LIKE has no foreign key).
    pub copy_fk: Option<f64>,
    /// 1,000-row multi-row INSERT ... ON CONFLICT DO NOTHING.
    pub insert: f64,
}

impl Limit {
    pub fn describe(&self, rows: i64) -> String {
        match self.copy {
            Some(copy) => format!(
                "{rows} message rows into a copy of messages: raw COPY {copy:.0} rows/s, COPY with the tenant foreign key {:.0} rows/s, {INSERT_ROWS}-row INSERT {:.0} rows/s",
                self.copy_fk.unwrap_or_default(),
                self.insert
            ),
            None => format!("{rows} message rows into a copy of messages: {INSERT_ROWS}-row INSERT {:.0} rows/s", self.insert),
        }
    }

    /// The drain rate against the fastest way in.
    pub fn ratio(&self, drain: f64) -> String {
        match self.copy {
            Some(copy) => format!(
                "raw COPY / drain = {:.2}x, 1000-row INSERT / drain = {:.2}x",
                copy / drain,
                self.insert / drain
            ),
            None => format!("1000-row INSERT / drain = {:.2}x", self.insert / drain),
        }
    }
}

pub async fn measure(database_url: &str, tenant_id: &str, count: i64) -> Limit {
    let rows = rows(tenant_id, count);
    let db = Database::connect(database_url).await.unwrap();
    let limit = if database_url.starts_with("postgres") {
        let pool = db.get_postgres_connection_pool();
        let copy = postgres_copy(pool, &rows, false).await;
        let copy_fk = postgres_copy(pool, &rows, true).await;
        let insert = postgres_insert(pool, &rows).await;
        Limit {
            copy: Some(rate(rows.len(), copy)),
            copy_fk: Some(rate(rows.len(), copy_fk)),
            insert: rate(rows.len(), insert),
        }
    } else {
        let insert = sqlite_insert(db.get_sqlite_connection_pool(), &rows).await;
        Limit { copy: None, copy_fk: None, insert: rate(rows.len(), insert) }
    };
    db.close().await.unwrap();
    limit
}

fn rate(rows: usize, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

const PG_COPY_TABLE: &str = "CREATE TABLE bench_messages (LIKE messages INCLUDING ALL)";

/// Binary COPY, the rows encoded beforehand: only the load is timed.
async fn postgres_copy(pool: &sqlx::PgPool, rows: &[Row], foreign_key: bool) -> Duration {
    sqlx::query(PG_COPY_TABLE).execute(pool).await.unwrap();
    if foreign_key {
        sqlx::query("ALTER TABLE bench_messages ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id)")
            .execute(pool)
            .await
            .unwrap();
    }
    let mut data = b"PGCOPY\n\xff\r\n\0".to_vec();
    data.extend_from_slice(&[0; 8]);
    let epoch_2000 = DateTime::from_timestamp(946_684_800, 0).unwrap();
    for row in rows {
        data.extend_from_slice(&17i16.to_be_bytes());
        let text = |data: &mut Vec<u8>, value: Option<&str>| match value {
            Some(value) => {
                data.extend_from_slice(&(value.len() as i32).to_be_bytes());
                data.extend_from_slice(value.as_bytes());
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        };
        let int = |data: &mut Vec<u8>, value: i64| {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&value.to_be_bytes());
        };
        text(&mut data, Some(&row.tenant_id));
        text(&mut data, Some(&row.session_id));
        int(&mut data, row.position);
        text(&mut data, Some("sqlite"));
        text(&mut data, Some(&row.event_id));
        text(&mut data, Some(row.role));
        text(&mut data, Some(&row.content));
        text(&mut data, row.model);
        text(&mut data, row.provider);
        for value in row.tokens {
            int(&mut data, value);
        }
        int(&mut data, (row.created_at - epoch_2000).num_microseconds().unwrap());
        text(&mut data, Some(&row.raw));
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    let mut conn = pool.acquire().await.unwrap();
    let started = Instant::now();
    let mut copy =
        conn.copy_in_raw(&format!("COPY bench_messages ({COLUMNS}) FROM STDIN (FORMAT binary)")).await.unwrap();
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await.unwrap();
    }
    assert_eq!(copy.finish().await.unwrap(), rows.len() as u64);
    let took = started.elapsed();
    drop(conn);
    sqlx::query("DROP TABLE bench_messages").execute(pool).await.unwrap();
    took
}

async fn postgres_insert(pool: &sqlx::PgPool, rows: &[Row]) -> Duration {
    sqlx::query(PG_COPY_TABLE).execute(pool).await.unwrap();
    let started = Instant::now();
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut insert = QueryBuilder::new(format!("INSERT INTO bench_messages ({COLUMNS}) "));
        insert.push_values(chunk, |mut b, row| {
            b.push_bind(&row.tenant_id)
                .push_bind(&row.session_id)
                .push_bind(row.position)
                .push_bind("sqlite")
                .push_bind(&row.event_id)
                .push_bind(row.role)
                .push_bind(&row.content)
                .push_bind(row.model)
                .push_bind(row.provider);
            for value in row.tokens {
                b.push_bind(value);
            }
            b.push_bind(row.created_at).push_bind(&row.raw).push_unseparated("::json");
        });
        insert.push(" ON CONFLICT DO NOTHING");
        insert.build().execute(pool).await.unwrap();
    }
    let took = started.elapsed();
    sqlx::query("DROP TABLE bench_messages").execute(pool).await.unwrap();
    took
}

/// The same on SQLite: the copy is made from the schema's own DDL.
async fn sqlite_insert(pool: &sqlx::SqlitePool, rows: &[Row]) -> Duration {
    let ddl: Vec<(String,)> =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE tbl_name = 'messages' AND sql IS NOT NULL")
            .fetch_all(pool)
            .await
            .unwrap();
    for (sql,) in &ddl {
        sqlx::query(&sql.replace("messages", "bench_messages")).execute(pool).await.unwrap();
    }
    let started = Instant::now();
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut insert = QueryBuilder::new(format!("INSERT INTO bench_messages ({COLUMNS}) "));
        insert.push_values(chunk, |mut b, row| {
            b.push_bind(&row.tenant_id)
                .push_bind(&row.session_id)
                .push_bind(row.position)
                .push_bind("sqlite")
                .push_bind(&row.event_id)
                .push_bind(row.role)
                .push_bind(&row.content)
                .push_bind(row.model)
                .push_bind(row.provider);
            for value in row.tokens {
                b.push_bind(value);
            }
            b.push_bind(row.created_at).push_bind(&row.raw);
        });
        insert.push(" ON CONFLICT DO NOTHING");
        insert.build().execute(pool).await.unwrap();
    }
    let took = started.elapsed();
    sqlx::query("DROP TABLE bench_messages").execute(pool).await.unwrap();
    took
}
