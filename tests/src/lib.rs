//! End-to-end tests of Ferry, driven the way an operator does (gRPC API, ferryctl).
