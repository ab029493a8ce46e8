//! Trimmed Envoy xDS v3 protobuf types and the tonic stubs of Envoy's Secret
//! Discovery Service (SDS).
//!
//! # Overview
//!
//! This crate holds just enough of Envoy's API to serve TLS credentials over
//! SDS:
//!
//! | Rust path | Proto package | Contents |
//! | --- | --- | --- |
//! | [`envoy::service::secret::v3`] | `envoy.service.secret.v3` | `SecretDiscoveryService` server and client (`DeltaSecrets`, `StreamSecrets`, `FetchSecrets`) |
//! | [`envoy::service::discovery::v3`] | `envoy.service.discovery.v3` | `DiscoveryRequest`/`Response`, `DeltaDiscoveryRequest`/`Response`, `Resource` |
//! | [`envoy::extensions::transport_sockets::tls::v3`] | `envoy.extensions.transport_sockets.tls.v3` | `Secret`, `TlsCertificate`, `CertificateValidationContext` |
//! | [`envoy::config::core::v3`] | `envoy.config.core.v3` | `Node` (id, cluster, user agent), `DataSource` |
//! | [`google::rpc`] | `google.rpc` | `Status` (the NACK `error_detail`) |
//! | [`google::protobuf`] | `google.protobuf` | `Any`, with `value: Bytes` |
//!
//! Package names, message names, service and method names and field numbers
//! are Envoy's, so the gRPC paths are Envoy's
//! (`/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`, ...) and
//! the messages are wire-compatible with what Envoy sends and expects.
//! [`SECRET_TYPE_URL`] is the type URL of the `Secret` resource.
//!
//! Every protobuf `bytes` field, notably [`google::protobuf::Any::value`], is a
//! [`bytes::Bytes`]: a secret can be encoded once and the encoded bytes shared,
//! without copying, by every stream that sends it.
//!
//! # Why trimmed
//!
//! The `.proto` files in `proto/` keep only the fields this project uses;
//! dropped field numbers are `reserved`. The main reason is
//! `envoy.config.core.v3.Node`: Envoy sends its whole `Node` (metadata,
//! locality, build version and a list of every compiled-in extension, often
//! tens of kilobytes) on every discovery request, ACKs included. With those
//! fields absent from the schema, prost skips them as unknown fields while
//! decoding, without allocating, and a request costs little more than its
//! resource names. Dropping Envoy's validation and `udpa` annotations also
//! means no dependency on their proto trees.
//!
//! # Example
//!
//! Encode a secret once and put it in a state-of-the-world response:
//!
//! ```
//! use bytes::Bytes;
//! use prost::Message;
//! use sds_proto::SECRET_TYPE_URL;
//! use sds_proto::envoy::config::core::v3::{DataSource, data_source};
//! use sds_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, TlsCertificate, secret};
//! use sds_proto::envoy::service::discovery::v3::DiscoveryResponse;
//! use sds_proto::google::protobuf::Any;
//!
//! fn inline(pem: &'static [u8]) -> Option<DataSource> {
//!     Some(DataSource {
//!         specifier: Some(data_source::Specifier::InlineBytes(Bytes::from_static(pem))),
//!     })
//! }
//!
//! let secret = Secret {
//!     name: "server_cert".to_owned(),
//!     r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
//!         certificate_chain: inline(b"-----BEGIN CERTIFICATE-----\n..."),
//!         private_key: inline(b"-----BEGIN PRIVATE KEY-----\n..."),
//!         ocsp_staple: None,
//!     })),
//! };
//!
//! // Encode once; cloning `Any` afterwards only bumps a reference count.
//! let packed = Any {
//!     type_url: SECRET_TYPE_URL.to_owned(),
//!     value: Bytes::from(secret.encode_to_vec()),
//! };
//!
//! let response = DiscoveryResponse {
//!     version_info: "1".to_owned(),
//!     resources: vec![packed.clone()],
//!     type_url: SECRET_TYPE_URL.to_owned(),
//!     nonce: "1".to_owned(),
//!     ..Default::default()
//! };
//!
//! let wire = response.encode_to_vec();
//! let decoded = DiscoveryResponse::decode(wire.as_slice())?;
//! assert_eq!(Secret::decode(decoded.resources[0].value.clone())?, secret);
//! # Ok::<(), prost::DecodeError>(())
//! ```
//!
//! Implementing the service (serving it needs tonic's `server` or `transport`
//! feature in the serving crate; this crate only needs `codegen`):
//!
//! ```
//! use std::pin::Pin;
//!
//! use sds_proto::envoy::service::discovery::v3::{
//!     DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
//! };
//! use sds_proto::envoy::service::secret::v3::secret_discovery_service_server::{
//!     SecretDiscoveryService, SecretDiscoveryServiceServer,
//! };
//! // Any `Stream` works; tokio-stream's or futures' trait is the same one.
//! use tonic::codegen::tokio_stream::Stream;
//! use tonic::{Request, Response, Status, Streaming};
//!
//! type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
//!
//! struct Sds;
//!
//! #[tonic::async_trait]
//! impl SecretDiscoveryService for Sds {
//!     type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;
//!     type StreamSecretsStream = BoxStream<DiscoveryResponse>;
//!
//!     async fn delta_secrets(
//!         &self,
//!         _request: Request<Streaming<DeltaDiscoveryRequest>>,
//!     ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
//!         Err(Status::unimplemented("delta SDS"))
//!     }
//!
//!     async fn stream_secrets(
//!         &self,
//!         _request: Request<Streaming<DiscoveryRequest>>,
//!     ) -> Result<Response<Self::StreamSecretsStream>, Status> {
//!         Err(Status::unimplemented("state-of-the-world SDS"))
//!     }
//!
//!     async fn fetch_secrets(
//!         &self,
//!         _request: Request<DiscoveryRequest>,
//!     ) -> Result<Response<DiscoveryResponse>, Status> {
//!         Err(Status::unimplemented("fetch SDS"))
//!     }
//! }
//!
//! // Hand this to `tonic::transport::Server::builder().add_service(..)`.
//! let _service = SecretDiscoveryServiceServer::new(Sds);
//! ```
//!
//! # Regenerating the code
//!
//! The Rust code in `src/gen/` is generated from `proto/` with pure-Rust tools
//! (`protox` compiles the protos, `tonic-prost-build` generates prost messages
//! and the tonic server and client) and is checked in, so neither users nor CI
//! need `protoc` or a build script. The test `tests/codegen.rs` regenerates the
//! code into a temporary directory and fails if it differs from `src/gen/` by a
//! single byte. After editing a `.proto` file, or upgrading prost, tonic or
//! protox, regenerate with:
//!
//! ```text
//! SDS_PROTO_REGENERATE=1 cargo test -p sds-proto --test codegen
//! ```
//!
//! # What this crate does not do
//!
//! - No transport: the generated client has no `connect()` helper; wrap any
//!   tonic `GrpcService` (for example a `tonic::transport::Channel`) with
//!   `SecretDiscoveryServiceClient::new`. Running a server or a channel needs
//!   tonic's `server`/`channel`/`transport` features in the crate that does so.
//! - No protocol logic: nonces, versions, ACK/NACK tracking and subscriptions
//!   belong to the server crate.
//! - No validation: Envoy's `validate` rules are dropped, and nothing here
//!   reads a `DataSource` file or environment variable.
//! - Not a general-purpose Envoy API crate: other xDS services, other secret
//!   kinds (session ticket keys, generic secrets) and most fields are absent.
//!   Re-encoding a decoded message drops the fields this schema omits.
//! - No JSON/serde mapping and no reflection descriptors.

/// The generated code, one module per proto package. Kept private: the
/// generated relative paths (`super::super::...`) need this exact tree, and
/// the public API below re-exports only what is meant to be used.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::restriction
)]
mod pb {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    include!("gen/envoy.config.core.v3.rs");
                }
            }
        }
        pub mod extensions {
            pub mod transport_sockets {
                pub mod tls {
                    pub mod v3 {
                        include!("gen/envoy.extensions.transport_sockets.tls.v3.rs");
                    }
                }
            }
        }
        pub mod service {
            pub mod discovery {
                pub mod v3 {
                    include!("gen/envoy.service.discovery.v3.rs");
                }
            }
            pub mod secret {
                pub mod v3 {
                    include!("gen/envoy.service.secret.v3.rs");
                }
            }
        }
    }
    pub mod google {
        pub mod protobuf {
            include!("gen/google.protobuf.rs");
        }
        pub mod rpc {
            include!("gen/google.rpc.rs");
        }
    }
}

/// Type URL of the SDS resource `envoy.extensions.transport_sockets.tls.v3.Secret`,
/// for [`google::protobuf::Any::type_url`] and the `type_url` of discovery
/// requests and responses.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

pub mod envoy {
    //! Envoy API packages (`envoy.*`).

    pub mod config {
        //! `envoy.config.*`

        pub mod core {
            //! `envoy.config.core.*`

            pub mod v3 {
                //! `envoy.config.core.v3`: node identity and data sources.
                //!
                //! `Node` keeps only `id`, `cluster` and `user_agent_name`; the
                //! rest of what Envoy sends is skipped while decoding.

                pub use crate::pb::envoy::config::core::v3::{DataSource, Node, data_source};
            }
        }
    }

    pub mod extensions {
        //! `envoy.extensions.*`

        pub mod transport_sockets {
            //! `envoy.extensions.transport_sockets.*`

            pub mod tls {
                //! `envoy.extensions.transport_sockets.tls.*`

                pub mod v3 {
                    //! `envoy.extensions.transport_sockets.tls.v3`: the SDS
                    //! resource `Secret` and what it carries.
                    //!
                    //! The `Secret.type` oneof is [`secret::Type`], with
                    //! `TlsCertificate` (field 2) and `ValidationContext`
                    //! (field 4).

                    pub use crate::pb::envoy::extensions::transport_sockets::tls::v3::{
                        CertificateValidationContext, Secret, TlsCertificate, secret,
                    };
                }
            }
        }
    }

    pub mod service {
        //! `envoy.service.*`

        pub mod discovery {
            //! `envoy.service.discovery.*`

            pub mod v3 {
                //! `envoy.service.discovery.v3`: the xDS request and response
                //! messages, state-of-the-world and delta.

                pub use crate::pb::envoy::service::discovery::v3::{
                    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
                    DiscoveryResponse, Resource,
                };
            }
        }

        pub mod secret {
            //! `envoy.service.secret.*`

            pub mod v3 {
                //! `envoy.service.secret.v3`: the `SecretDiscoveryService`.
                //!
                //! - [`secret_discovery_service_server`] has the
                //!   `SecretDiscoveryService` trait to implement (with
                //!   `#[tonic::async_trait]`), the `SecretDiscoveryServiceServer`
                //!   tower service wrapping it, and `SERVICE_NAME`.
                //! - [`secret_discovery_service_client`] has
                //!   `SecretDiscoveryServiceClient`, generic over any tonic
                //!   `GrpcService` (no `connect()` helper).

                pub use crate::pb::envoy::service::secret::v3::{
                    secret_discovery_service_client, secret_discovery_service_server,
                };
            }
        }
    }
}

pub mod google {
    //! Google well-known and API types used by xDS (`google.*`).

    pub mod protobuf {
        //! `google.protobuf`: our own `Any`, whose `value` is
        //! [`bytes::Bytes`] (unlike `prost_types::Any`, which uses `Vec<u8>`).

        pub use crate::pb::google::protobuf::Any;
    }

    pub mod rpc {
        //! `google.rpc`: `Status`, the `error_detail` of a NACK.

        pub use crate::pb::google::rpc::Status;
    }
}
