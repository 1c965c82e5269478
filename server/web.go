package server

// webRoutes registers the web chat page and its static files.
func (s *Server) webRoutes() {}
