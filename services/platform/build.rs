// `sqlx::migrate!` embeds migrations/ at compile time; without this, adding a migration file
// would not rebuild the crate and the new migration would silently not exist.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
