// Package cluster provides what a node needs to be one of many: memberlist
// membership, and the Redis implementations of the interfaces package chat
// declares (the room relay, RedisBroker; cluster presence and connection
// limits).
//
// Every Redis-backed type here runs against a real Redis server in its tests
// (internal/testsvc starts one), through the same conformance suites as the
// in-memory implementations in package chat (package chat/chattest).
package cluster
