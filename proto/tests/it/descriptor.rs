//! The embedded `FILE_DESCRIPTOR_SET`: it decodes and describes the three services.

use prost::Message as _;

/// Just the parts of `google.protobuf.FileDescriptorSet` these tests read; prost skips the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MethodDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

/// `package.Service` to its method names, for every service in the set.
fn services() -> Vec<(String, Vec<String>)> {
    let mut services = Vec::new();
    for file in descriptors().file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let name = format!("{package}.{}", service.name.unwrap_or_default());
            let methods = service.method.into_iter().map(|method| method.name.unwrap_or_default()).collect();
            services.push((name, methods));
        }
    }
    services.sort();
    services
}

#[test]
fn names_every_file_in_the_package() {
    let mut files: Vec<_> =
        descriptors().file.into_iter().map(|file| (file.name.unwrap_or_default(), file.package)).collect();
    files.sort();
    let package = Some("aegis.ledger.v1".to_owned());
    assert_eq!(
        files,
        [
            ("aegis/ledger/v1/admin.proto".to_owned(), package.clone()),
            ("aegis/ledger/v1/ledger.proto".to_owned(), package.clone()),
            ("aegis/ledger/v1/raft.proto".to_owned(), package.clone()),
            ("aegis/ledger/v1/record.proto".to_owned(), package),
        ]
    );
}

#[test]
fn names_the_three_services_and_their_methods() {
    let expected: Vec<(String, Vec<String>)> = [
        ("aegis.ledger.v1.Admin", &["Init", "AddNode", "RemoveNode", "Status"][..]),
        (
            "aegis.ledger.v1.Ledger",
            &[
                "Append",
                "GetCheckpoint",
                "GetEntries",
                "GetInclusionProof",
                "GetConsistencyProof",
                "WatchCheckpoints",
            ][..],
        ),
        ("aegis.ledger.v1.RaftPeer", &["AppendEntries", "Vote", "InstallSnapshot", "Cosign"][..]),
    ]
    .into_iter()
    .map(|(name, methods)| (name.to_owned(), methods.iter().map(|method| (*method).to_owned()).collect()))
    .collect();
    assert_eq!(services(), expected);
}

#[test]
fn generated_service_names_match_the_descriptors() {
    // Reflection serves the descriptors and routing uses these names: they must agree.
    let names: Vec<_> = services().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            proto::v1::admin_server::SERVICE_NAME,
            proto::v1::ledger_server::SERVICE_NAME,
            proto::v1::raft_peer_server::SERVICE_NAME,
        ]
    );
}
