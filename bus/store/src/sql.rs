//! The store's SQL, written once: [`SqlStore`] implements every store trait (one impl per
//! domain, beside its trait: `pigeons.rs`, `dead_letters.rs`, `tokens.rs`, `registry.rs`,
//! `dictionary.rs`, `counts.rs`, `archive.rs`) on any database that is a [`Dialect`].
//! `sqlite.rs` and `mysql.rs` hold only what differs: the connection and the [`Dialect`].
//!
//! Both backends take `?` placeholders, row values, `COALESCE` and `CASE`; queries are
//! checked at run time, and the same conformance suite runs on both.

use sqlx::migrate::{Migrate, Migrator};
use sqlx::query::{Query, QueryAs};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type};

use super::StoreError;

/// The store on one database.
#[derive(Debug)]
pub struct SqlStore<DB: Dialect> {
    pub(super) pool: Pool<DB>,
}

impl<DB: Dialect> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone() }
    }
}

/// What differs between the databases, and what the SQL needs of one.
///
/// The supertraits are the sqlx traits the SQL uses, said once here so that `DB: Dialect` is
/// all an impl needs. Rust lets a trait's users assume its supertraits and the bounds of their
/// associated types, but not its other where-clauses: a bound on some other type (`i64:
/// Encode<'q, DB>`) would have to be repeated on every impl. So such a bound is said of
/// `<DB as Same<T>>::Is`, which is `T` ([`Column`], [`Borrowed`], [`Queries`]).
pub trait Dialect:
    for<'q> Database<Arguments<'q>: IntoArguments<'q, Self>, QueryResult: Done, Connection: Migrate>
    + Queries
    + Column<bool>
    + Column<i32>
    + Column<i64>
    + Column<String>
    + Column<Vec<u8>>
    + Column<Option<i32>>
    + Column<Option<i64>>
    + Column<Option<String>>
    + Column<Option<Vec<u8>>>
    + Borrowed<str>
    + Borrowed<[u8]>
{
    /// Starts a write transaction.
    const BEGIN_WRITE: &'static str;

    /// Appended to a `SELECT` that reads a row the transaction then updates.
    const LOCK_ROW: &'static str;

    /// How to insert rows that may exist already, leaving those as they are: the statement's
    /// start, and what follows its `VALUES`.
    const INSERT_ONCE: (&'static str, &'static str);

    /// An `UPDATE dead_letters SET {set} WHERE {condition} ORDER BY {order} LIMIT ?`.
    fn update_first(set: &str, condition: &str, order: &str) -> String;

    /// A `DELETE FROM {table} WHERE {condition} LIMIT ?`.
    fn delete_first(table: &str, condition: &str) -> String;

    /// What follows an `INSERT … VALUES …` so a row whose key (`conflict`, its columns) exists
    /// adds the new values of the `add` columns and keeps the greater of the `max` columns.
    fn upsert_add(conflict: &str, add: &[&str], max: &[&str]) -> String;

    /// The database's migrations.
    fn migrator() -> &'static Migrator;
}

/// What a statement did (sqlx's result types share no trait for it).
pub trait Done {
    /// Rows inserted, updated or deleted.
    fn rows_affected(&self) -> u64;
    /// The id the statement's insert was given.
    fn last_insert_id(&self) -> i64;
}

/// `T` itself, named through any type: a bound on `<X as Same<T>>::Is` among a trait's
/// supertraits is a bound on `T` that the trait's users may assume (see [`Dialect`]).
pub trait Same<T: ?Sized> {
    /// `T`.
    type Is: ?Sized;
}

impl<T: ?Sized, X: ?Sized> Same<T> for X {
    type Is = T;
}

/// `T` binds to a `?` of this database and decodes from its columns.
pub trait Column<T>:
    Database + Same<T, Is = T> + Same<T, Is: for<'q> Encode<'q, Self> + for<'r> Decode<'r, Self> + Type<Self>>
{
}

impl<DB: Database, T> Column<T> for DB where T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> {}

/// A `&T` binds to a `?` of this database.
pub trait Borrowed<T: ?Sized>:
    Database + for<'a> Same<&'a T, Is = &'a T> + for<'a> Same<&'a T, Is: Encode<'a, Self> + Type<Self>>
{
}

impl<DB: Database, T: ?Sized> Borrowed<T> for DB where for<'a> &'a T: Encode<'a, DB> + Type<DB> {}

/// Statements run on a connection (and so on a pool and in a transaction), and rows are read
/// by column name (`FromRow`) and by position (tuples).
pub trait Queries:
    Database
    + for<'c> Same<&'c mut Self::Connection, Is = &'c mut Self::Connection>
    + for<'c> Same<&'c mut Self::Connection, Is: Executor<'c, Database = Self>>
    + for<'a> Same<&'a str, Is = &'a str>
    + for<'a> Same<&'a str, Is: ColumnIndex<Self::Row>>
    + Same<usize, Is = usize>
    + Same<usize, Is: ColumnIndex<Self::Row>>
{
}

impl<DB: Database> Queries for DB
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
}

/// A statement that takes parameters ([`Query`] or [`QueryAs`]), for helpers that bind to
/// either.
pub trait Bind<'q, DB: Database>: Sized {
    /// Binds the next `?`.
    fn bind<T: 'q + Encode<'q, DB> + Type<DB>>(self, value: T) -> Self;
}

impl<'q, DB: Database> Bind<'q, DB> for Query<'q, DB, DB::Arguments<'q>> {
    fn bind<T: 'q + Encode<'q, DB> + Type<DB>>(self, value: T) -> Self {
        Query::bind(self, value)
    }
}

impl<'q, DB: Database, O> Bind<'q, DB> for QueryAs<'q, DB, O, DB::Arguments<'q>> {
    fn bind<T: 'q + Encode<'q, DB> + Type<DB>>(self, value: T) -> Self {
        QueryAs::bind(self, value)
    }
}

const INSERT_AUDIT: &str =
    "INSERT INTO audit (at, actor, action, target, before_json, after_json) VALUES (?, ?, ?, ?, ?, ?)";

impl<DB: Dialect> SqlStore<DB> {
    /// Starts a write transaction (SQLite takes the write lock at once, which avoids upgrade
    /// deadlocks).
    pub(super) async fn begin(&self) -> Result<Transaction<'static, DB>, StoreError> {
        Ok(self.pool.begin_with(DB::BEGIN_WRITE).await?)
    }

    /// The audit entry of one mutation, to run in its transaction: when, who, what, on what,
    /// and the thing before and after (JSON text, `None` when it did not exist).
    pub(super) fn audit_entry<'q>(
        at: i64,
        actor: &'q str,
        action: &'q str,
        target: String,
        before: Option<String>,
        after: Option<String>,
    ) -> Query<'q, DB, DB::Arguments<'q>> {
        sqlx::query(INSERT_AUDIT).bind(at).bind(actor).bind(action).bind(target).bind(before).bind(after)
    }
}

/// ` VALUES (?, …), …`: `rows` rows of `columns` placeholders, for a multi-row `INSERT`.
pub(super) fn values(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!(" VALUES {}", vec![row.as_str(); rows].join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_rows_of_placeholders() {
        assert_eq!(values(1, 1), " VALUES (?)");
        assert_eq!(values(2, 3), " VALUES (?, ?, ?), (?, ?, ?)");
    }
}
