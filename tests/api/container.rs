//! No Docker engine runs here: check what can be checked of the container recipe.

const DOCKERFILE: &str = include_str!("../../Dockerfile");

#[test]
fn the_image_runs_the_binary_as_a_non_root_numeric_user_with_a_healthcheck() {
    let user = DOCKERFILE
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n > 0),
        "numeric non-root uid: {user}"
    );
    assert!(DOCKERFILE.contains("cargo build --release --locked"));
    assert!(DOCKERFILE.contains("target/release/rooms-sync /usr/local/bin/rooms-sync"));
    assert!(DOCKERFILE.contains(r#"CMD ["/usr/local/bin/rooms-sync", "healthcheck"]"#));
    assert!(DOCKERFILE.contains("EXPOSE 8080"));
    // Migrations are embedded at compile time, so the build stage must see them.
    assert!(DOCKERFILE.contains("COPY migrations migrations"));
}
